"""The language-model task: corpus and vocabulary, basis assignment, teacher, students, distillation, evaluation, predict, stages."""
